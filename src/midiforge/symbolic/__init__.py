"""Symbolic (MIDI) stages: musical validation, augmentation and REMI tokenization.

Every function here takes MIDI bytes and reports bad musical content as a reject
reason (short snake_case code plus a readable detail) rather than raising.
"""
