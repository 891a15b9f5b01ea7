"""Tensor stores: the ``TensorStore`` ABC with capability flags (``base``), backends (``zarr_store``,
``memory``), location -> store resolution (``resolve``) and owned store keys (``keys``). Every backend
passes ``prompt_registry.testing.store_contract``."""
