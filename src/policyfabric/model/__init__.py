"""policyfabric.model"""
