"""Exercises for a course on Llama 3: skeletons (exNN_*.py) the student fills in,
checks against the project's code (checks.py), reference answers (solutions.py).
Statements: exercises/README.md. Run one: pytest exercises/ -k rmsnorm"""
