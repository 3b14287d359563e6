"""The one warning category for the user's input: something was adjusted, or looks wrong, and the run goes on.

Command lines (:func:`extracter.utils.cli.run_main`) print it as one ``warning: <message>`` line; library callers
get an ordinary :class:`UserWarning` subclass they can filter. Subclasses say where it comes from
(:class:`extracter.data.image_io.ImageInputWarning` for images).
"""


class InputWarning(UserWarning):
    """An input or option was adjusted (e.g. a tile pad raised to the network's floor) or looks wrong; the message
    names it and says what to do."""
