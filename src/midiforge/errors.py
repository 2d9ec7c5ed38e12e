"""The base of every error a user can fix (bad config, missing model, unreadable input).
The CLI prints these as one line and exits 2; anything else is a bug and keeps its traceback."""


class MidiforgeError(Exception):
    """An error whose message tells the user what to change."""
