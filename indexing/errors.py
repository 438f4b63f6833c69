"""The one exception type for user mistakes (bad files, flags, inputs).

The CLI prints its message on one line and exits non-zero; the service maps it to a 4xx. Anything else that
escapes is a bug and keeps its traceback. It lives in ``indexing`` because every package may import it.
"""


class UserError(Exception):
    """A mistake the user can fix: the message names the file, row, field or flag and what is wrong."""
