"""midiforge: audio to genre-specific MIDI training data on Ray."""
