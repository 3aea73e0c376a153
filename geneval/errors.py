"""The one exception type for user errors: the CLI turns it into a one-line message and exit 2."""


class GenevalError(Exception):
    """A problem with the user's input or environment (missing file, bad shape, missing weights).

    The message must fit on one line and say what is wrong and, where possible, how to fix it.
    """


class MissingWeightsError(GenevalError):
    """A needed weight file is absent; the message names the file, its sha256 and where to put it."""
