"""Stores: where a server keeps its namespaces, behind one interface."""
