"""policyfabric.authority"""
