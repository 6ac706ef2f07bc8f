"""The checks of a twin config, one small function per rule, grouped by section.

Every rule reads the parsed TOML (and what earlier rules built), reports into a
:class:`~gateway.config.problems.Problems` and returns what it built; none raises.
:mod:`gateway.config.loader` calls them in dependency order: network, plants, meters,
channels, streams, then the sections that only refer to those.
"""
