"""Command-line scripts (also importable so tests can call their main())."""
