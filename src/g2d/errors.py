"""The one exception type the command line turns into a readable one-line error."""


class G2DError(Exception):
    """A bad input or setting; the message names the file or config key at fault."""
