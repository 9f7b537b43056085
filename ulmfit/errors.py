"""The one exception type the command line turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """A mistake in the user's input or settings: the message names the file, row and column."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """A library's exception message as one short line for a UserError (some span many
    lines, some are empty)."""
    text = " ".join(str(err).split())
    return (text[:limit] + " ...") if len(text) > limit else (text or type(err).__name__)
