"""Helpers for tests and demos: the store contract suite every backend subclasses, tiny randomly
initialised models built locally."""
