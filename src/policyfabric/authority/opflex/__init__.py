"""The authority's OpFlex side: ``policy_tree.py`` writes the stored model as GBP managed objects."""
