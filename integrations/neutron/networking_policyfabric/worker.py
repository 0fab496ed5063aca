"""The one worker (``MechanismDriver.get_workers``): sends the journal in order, and brings
ports' status back from the authority.

It runs in Neutron's periodic-worker process (``neutron-periodic-workers``), one thread for each
loop:

- the journal: the head row (``journal.head``) is sent (``sender.Sender``), its outcome recorded
  (``journal.after``); while the authority is away the head row waits and retries, so rows queue
  in Neutron's database and nothing is lost. When the authority's revision goes backwards (its
  state was restored or lost) a full sync runs (``sync.full_sync``).
- status: each second it lists the authority's endpoints; a bound port whose endpoint an agent
  reports ACTIVE completes its provisioning block (Neutron then sets it ACTIVE and tells Nova
  ``vif-plugged``); an ACTIVE port whose endpoint is no longer ACTIVE (unplugged) goes DOWN.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.callbacks import resources
from neutron_lib.db import api as db_api
from neutron_lib.plugins import directory
from neutron_lib.worker import BaseWorker

from networking_policyfabric import config, db, journal, mapping
from networking_policyfabric.client import Authority
from networking_policyfabric.sender import Reader, Sender

LOG = logging.getLogger(__name__)
IDLE = 0.2  # seconds between looks at an empty journal
DONE_KEEP = 3600.0  # seconds a sent row stays in the table (for operators), then it is removed


def authority() -> Authority:
    conf = config.conf()
    return Authority(conf.url, conf.token, timeout=conf.timeout)


class JournalWorker(BaseWorker):
    def __init__(self) -> None:
        super().__init__(worker_process_count=0, desc="policyfabric journal")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, **kwargs: Any) -> None:
        super().start(**kwargs)
        for target in (self._journal_loop, self._status_loop):
            t = threading.Thread(target=target, name=target.__name__, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        for t in self._threads:
            t.join()

    def reset(self) -> None:
        pass

    # ---- the journal
    def _journal_loop(self) -> None:
        ctx = n_context.get_admin_context()
        sender = Sender(authority(), Reader(ctx, config.conf().gateway_hosts))
        last_revision: int | None = None
        while not self._stop.is_set():
            try:
                last_revision = self._watch_revision(sender, ctx, last_revision)
                if not self.process_once(ctx, sender):
                    self._stop.wait(IDLE)
            except Exception:  # a bug in one pass must not stop the journal for good: logged, retried
                LOG.exception("policyfabric journal pass failed; retrying")
                self._stop.wait(1.0)

    def _watch_revision(self, sender: Sender, ctx: Any, last: int | None) -> int | None:
        a = sender.authority.revision()
        if a.status != 200:
            return last
        now = int(a.body["revision"])
        if last is not None and now < last:
            from networking_policyfabric.sync import full_sync

            LOG.warning("the authority's revision went back (%s -> %s): full sync", last, now)
            sender.forget_tenants()
            full_sync(ctx, sender)
        return now

    @staticmethod
    def process_once(ctx: Any, sender: Sender) -> bool:
        """Send the head row if one may go now; True if a row was handled."""
        now = time.time()
        with db_api.CONTEXT_READER.using(ctx):
            rows = [db.to_pure(r) for r in ctx.session.query(db.JournalRow).filter_by(state=journal.PENDING)]
        row, skipped, _ = journal.head(rows, now)
        if skipped:
            with db_api.CONTEXT_WRITER.using(ctx):
                ctx.session.query(db.JournalRow).filter(
                    db.JournalRow.seq.in_([r.seq for r in skipped])
                ).update({"state": journal.DONE, "error": "superseded"}, synchronize_session=False)
        if row is None:
            with db_api.CONTEXT_WRITER.using(ctx):
                ctx.session.query(db.JournalRow).filter(
                    db.JournalRow.state == journal.DONE, db.JournalRow.created_at < now - DONE_KEEP
                ).delete(synchronize_session=False)
            return bool(skipped)
        answer = sender.send(row.resource, row.object_id)
        outcome = journal.classify(answer.status)
        new = journal.after(row, outcome, time.time(), answer.error[:1000])
        if outcome == journal.REFUSED:
            LOG.warning(
                "policyfabric refused %s %s (%s): %s", row.resource, row.object_id, new.state, answer.error
            )
        elif outcome == journal.AWAY and row.attempts == 0:
            LOG.warning(
                "policyfabric authority away (%s); %s %s waits", answer.error, row.resource, row.object_id
            )
        with db_api.CONTEXT_WRITER.using(ctx):
            ctx.session.query(db.JournalRow).filter_by(seq=row.seq).update(
                {"state": new.state, "attempts": new.attempts, "next_try": new.next_try, "error": new.error},
                synchronize_session=False,
            )
        return outcome == journal.SENT

    # ---- port status
    def _status_loop(self) -> None:
        ctx = n_context.get_admin_context()
        auth = authority()
        while not self._stop.is_set():
            try:
                self.status_once(ctx, auth)
            except Exception:  # as above: logged, tried again next second
                LOG.exception("policyfabric status pass failed; retrying")
            self._stop.wait(config.conf().status_interval)

    @staticmethod
    def status_once(ctx: Any, auth: Authority) -> None:
        from neutron.db import provisioning_blocks

        a = auth.list("endpoints")
        if a.status != 200:
            return
        active = {e["name"] for e in a.body.get("items", []) if e.get("status") == "ACTIVE"}
        core = directory.get_plugin()
        for p in core.get_ports(ctx):
            if p.get("binding:vif_type") != "ovs" or p["device_owner"] in mapping.NOT_ENDPOINTS:
                continue
            up = p["id"] in active
            if up and p["status"] != n_const.PORT_STATUS_ACTIVE:
                provisioning_blocks.provisioning_complete(
                    ctx, p["id"], resources.PORT, provisioning_blocks.L2_AGENT_ENTITY
                )
            elif not up and p["status"] == n_const.PORT_STATUS_ACTIVE:
                core.update_port_status(ctx, p["id"], n_const.PORT_STATUS_DOWN)
