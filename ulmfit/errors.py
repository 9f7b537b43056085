"""The one exception type the command line turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """A mistake in the user's input or settings: the message names the file, row and column."""
