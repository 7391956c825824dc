"""Teachers, students and their blocks, scoring (maps -> scores), checkpoints and loading them."""
