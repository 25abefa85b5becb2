"""Networks of Register by Generation: Stage 1, registration, DACA and Stage 2."""
