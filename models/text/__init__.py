"""Real text for calibrating and checking text encoders (public-domain sources)."""
