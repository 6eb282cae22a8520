"""Flux and systemd integration: the prolog/epilog that run datacrumbs@<jobid>.service.

The logic lives here in Python (the installed sbin scripts only ``exec`` into it),
so every value coming from Flux or the user is validated before it names a unit,
a file, or reaches systemd.
"""
