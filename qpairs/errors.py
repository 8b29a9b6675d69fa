"""The error of bad input data, shared by the readers (`qpairs.tableio`, `qpairs.data`) and their callers."""


class DataError(ValueError):
    """Bad input data: the message names the file, the row and the column."""
