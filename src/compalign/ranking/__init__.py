"""Ranking of gallery records, by machines (`auto`) and by people (`server`, `store`, `people`).

`order` holds the pure parts: IterComp rank lists, tiers with explicit ties, Borda aggregation,
Kendall agreement and the binary insertion of new models into an order.
"""
