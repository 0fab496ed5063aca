"""`policyfabric migrate`: copy a whole store to another, offline (SQLite to etcd, and back).

A store-to-store copy rather than an export and an import through REST: it keeps ids, revisions,
VNIs and class ids and the change log, so agents see nothing change (``store.dump`` says why and
how it stays all or nothing). The authorities are stopped while it runs; it reads nothing from
them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from policyfabric.cli.console import err, fail, out


def migrate(
    source: Annotated[
        str,
        typer.Option("--from", help="The store to copy: sqlite:FILE, or etcd://HOST:PORT,.../PREFIX."),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            help="Where to copy it: sqlite:FILE or etcd://HOST:PORT,.../PREFIX; empty, or already "
            "holding the same (then nothing is written).",
        ),
    ],
    etcd_cacert: Annotated[Path | None, typer.Option(help="CA of the etcd members' certificates.")] = None,
    etcd_cert: Annotated[Path | None, typer.Option(help="Client certificate for etcd (PEM).")] = None,
    etcd_key: Annotated[Path | None, typer.Option(help="Key of --etcd-cert.")] = None,
    batch_ops: Annotated[
        int,
        typer.Option(
            min=8,
            help="etcd operations per transaction when writing to etcd: under the cluster's "
            "--max-txn-ops (128 by default).",
        ),
    ] = 100,
) -> None:
    """Copy every object, claim, sequence (VNIs, class ids), the revision and the change log of one
    store into another, then read the target back and compare. Stop the authorities first: writes
    made during the copy are not in it. Safe to run again: a finished copy is left as it is, a copy
    cut off half way is cleared and made again."""
    from policyfabric.store.dump import MigrationError, open_side
    from policyfabric.store.dump import migrate as copy
    from policyfabric.store.etcd_client import ClientTls

    if (etcd_cert is None) != (etcd_key is None):
        raise fail("--etcd-cert and --etcd-key go together")
    tls = ClientTls(etcd_cacert, etcd_cert, etcd_key) if etcd_cacert or etcd_cert else None
    try:
        src = open_side(source, source=True, tls=tls)
        try:
            dst = open_side(target, source=False, tls=tls, batch_ops=batch_ops)
        except MigrationError:
            src.close()
            raise
        try:
            last = [0.0]

            def progress(done: int, total: int) -> None:
                if total and (done == total or done / total - last[0] >= 0.1):
                    last[0] = done / total
                    err.print(f"  {done}/{total} written", highlight=False, soft_wrap=True)

            outcome = copy(src, dst, progress)
        finally:
            src.close()
            dst.close()
    except MigrationError as exc:
        raise fail(str(exc)) from None
    if outcome.cleared_partial:
        out.print(f"cleared an unfinished copy in {target}", highlight=False, markup=False, soft_wrap=True)
    if outcome.copied:
        said = f"copied {outcome.summary} from {source} to {target}; read back: identical"
        out.print(said, highlight=False, markup=False, soft_wrap=True)  # one line: scripts grep it
    else:
        out.print(
            f"{target} already holds the same ({outcome.summary}): nothing written",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
