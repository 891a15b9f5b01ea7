"""The catalogue: SQLAlchemy schema (``schema``), engines and units of work (``engine``), Alembic
schema checks (``migrations``), lookups with actionable errors (``lookups``), row -> entity mappers
(``mappers``), dialect-specific bulk statements (``bulk``) and the catalogue id (``info``). Only
services (``core``) open sessions; ORM rows never leave them."""
