"""The one exception type that the entry points turn into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, command line).

    The message must be one line that names the offending file, key or value and says
    what was expected. Entry points print ``error: <message>`` and exit with status 2.
    """
