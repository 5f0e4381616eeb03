"""Field devices simulated over their real protocols, for tests and the demo."""
