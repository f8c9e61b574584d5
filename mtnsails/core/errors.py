"""The one exception type the CLI turns into a one-line message and exit code 2."""


class MtnsailsError(Exception):
    """A problem the user can fix (bad file, bad flag, missing model).

    The message is a single line that names the file or setting and the problem;
    the CLI prints it to stderr without a traceback and exits with `exit_code`.
    """

    exit_code = 2


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), for a
    one-line error about a failure deep inside a library."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DataFormatError(MtnsailsError, ValueError):
    """A data file or record that cannot be read; the message names the file and where."""
