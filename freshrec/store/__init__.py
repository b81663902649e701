"""State behind one interface: events, user histories, the item table and item vectors."""

from freshrec.store.base import Event, Item, StateStore, StoreUnavailable, UserHistory, open_store

__all__ = ["Event", "Item", "StateStore", "StoreUnavailable", "UserHistory", "open_store"]
