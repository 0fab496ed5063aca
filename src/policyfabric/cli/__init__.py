"""policyfabric.cli"""
