"""HTTP serving of midiforge's models: request logic here, the Ray Serve app in serve/app.py."""
