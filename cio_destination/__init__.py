"""Deliver dlt rows into Customer.io."""
