"""The errors of bad input data (shared by the readers, `qpairs.tableio` and `qpairs.data`, and their callers) and of
a damaged model folder (`ModelDirError`), and the check of a count passed to the API."""
import numbers


class DataError(ValueError):
    """Bad input data: the message names the file, the row and the column."""


class MissingColumnError(DataError):
    """A required column was not found; `role` says which (first-question, second-question, label, question text), so
    a command can name its own option that picks that column."""

    def __init__(self, message: str, role: str):
        super().__init__(message)
        self.role = role

    def __reduce__(self):
        return type(self), (str(self), self.role)


def require_count(value, name: str) -> None:
    """Refuse (ValueError) anything but a whole number of at least 1 (a bool or 2.0 is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or corrupt."""
