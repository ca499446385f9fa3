"""Warnings from upstream: the county's warning-release platform (CAP 1.2, cap.py) and
the upper-level emergency-broadcast platform (EBM packages). Both end in one intake
(intake.py), which decides what is played, held for review, or only recorded."""
