"""The one error tree of prompt-registry.

Every error names what was wrong, with which object, and how to fix it. Each subclass also
derives from the builtin that fits, so callers may catch either::

    PromptRegistryError                      (Exception)
    +-- RegistryNotFoundError                (+ FileNotFoundError)  no registry at that location
    +-- SchemaError                          (+ RuntimeError)       schema missing, old or too new
    +-- NotFoundError                        (+ LookupError)        unknown object
    |   +-- UnknownModelError
    |   +-- UnknownTaskError
    |   +-- UnknownUserError
    |   +-- UnknownSetError
    |   +-- UnknownAliasError
    |   +-- UnknownArtifactError
    |   +-- UnknownRunError
    |   +-- UnknownPlanError
    +-- InvalidArgumentError                 (+ ValueError)         a bad argument: name, kind, number, option
    +-- ConflictError                        (+ ValueError)         would contradict what exists
    |   +-- ModelConflictError               same name, other fingerprint
    |   +-- DuplicateUserError
    |   +-- ModelMismatchError               prompt/artifact made for another model
    |   +-- StoreBindingError                the tensor store belongs to another catalogue
    |   +-- NoPlanError                      no migration path meets the constraints (says what is missing)
    |   +-- BusyError                        the catalogue stayed locked by other writers: rolled back, run again
    +-- InvalidPromptError                   (+ ValueError)         bad tensor values or shape
    |   +-- ShapeError
    |   +-- NonFiniteError
    |   +-- DTypeError                       (+ TypeError)
    +-- InvalidFileError                     (+ ValueError)         not valid safetensors/npy/csv
    +-- IntegrityError                       (+ OSError)            stored bytes missing or corrupt
    |   +-- ChecksumError
    |   |   +-- RowChecksumError             rows of a verified read fail their sha256
    |   +-- MissingDataError
    +-- AssetMissingError                    (+ FileNotFoundError)  an offline model/data asset is not installed
    +-- PromptRegistryWarning                (Warning)              warnings we emit
"""

from __future__ import annotations


class PromptRegistryError(Exception):
    """Root of every error raised by prompt-registry."""


class RegistryNotFoundError(PromptRegistryError, FileNotFoundError):
    """No registry exists at the given location."""


class SchemaError(PromptRegistryError, RuntimeError):
    """The catalogue schema is missing, older or newer than this package expects."""


class NotFoundError(PromptRegistryError, LookupError):
    """An object that was referred to does not exist."""


class UnknownModelError(NotFoundError):
    pass


class UnknownTaskError(NotFoundError):
    pass


class UnknownUserError(NotFoundError):
    pass


class UnknownSetError(NotFoundError):
    pass


class UnknownAliasError(NotFoundError):
    pass


class UnknownArtifactError(NotFoundError):
    pass


class UnknownRunError(NotFoundError):
    pass


class UnknownPlanError(NotFoundError):
    """No migration plan with that id."""


class InvalidArgumentError(PromptRegistryError, ValueError):
    """An argument that is wrong on its own: a malformed name, an unknown kind, a number out of range."""


class ConflictError(PromptRegistryError, ValueError):
    """The operation would contradict what the registry already holds."""


class ModelConflictError(ConflictError):
    pass


class BusyError(ConflictError):
    """Other writers kept the catalogue locked past the wait (SQLite's busy timeout), or Postgres
    ended the transaction to break a deadlock or a serialization conflict: it was rolled back,
    nothing of it is visible, and running the operation again is safe."""


class DuplicateUserError(ConflictError):
    pass


class ModelMismatchError(ConflictError):
    """A prompt set or artifact was requested for a model other than the one it was made for."""


class StoreBindingError(ConflictError):
    """The tensor store belongs to another catalogue: a store serves exactly one."""


class NoPlanError(ConflictError):
    """No migration path from the sources to the target meets the constraints; the message says
    what is missing (prompts, a stored adapter, a hop) and which constraint ruled a path out."""


class InvalidPromptError(PromptRegistryError, ValueError):
    """Prompt tensors with values or a shape that cannot be stored."""


class ShapeError(InvalidPromptError):
    pass


class NonFiniteError(InvalidPromptError):
    pass


class DTypeError(InvalidPromptError, TypeError):
    pass


class InvalidFileError(PromptRegistryError, ValueError):
    """An input file that is not what it claims to be (truncated, pickled, wrong columns)."""


class IntegrityError(PromptRegistryError, OSError):
    """Stored bytes are missing or do not match their recorded checksum."""


class ChecksumError(IntegrityError):
    pass


class MissingDataError(IntegrityError):
    pass


class RowChecksumError(ChecksumError):
    """Rows of a verified read whose bytes do not match their expected sha256.

    ``positions`` index the rows *as requested* (the caller maps them back to users).
    """

    def __init__(self, key: str, location: str, positions: list[int], files: tuple[str, ...] = ()) -> None:
        self.key, self.location, self.positions, self.files = key, location, list(positions), tuple(files)
        where = f" (file {', '.join(self.files[:3])}{' ...' if len(self.files) > 3 else ''})" if self.files else ""
        super().__init__(
            f"{len(self.positions)} row(s) of array {key!r} in {location}{where} fail their sha256 check: the "
            "bytes were modified or corrupted. Run `prompt-registry doctor --repair` (restores rows other "
            "versions hold), or restore the store from backup or re-import the set"
        )

    def in_files(self, files: tuple[str, ...]) -> RowChecksumError:
        """The same error, naming the files that hold the bad rows."""
        return RowChecksumError(self.key, self.location, self.positions, files)


class AssetMissingError(PromptRegistryError, FileNotFoundError):
    """A real model or data set that is fetched offline through PyPI packages is not installed."""


class PromptRegistryWarning(Warning):
    """Warnings emitted by prompt-registry (tests turn them into errors)."""
