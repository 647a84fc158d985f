"""Matching: who fits whom (policy, pure), and the matchmaker that claims partners in PostgreSQL."""
