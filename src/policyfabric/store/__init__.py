"""policyfabric.store"""
