"""Recommendation models; each scores all items through ``score_all`` for the shared full-ranking evaluation."""
