"""A run's report: its logged history read back (`history`), the curves (`figure`), and `report.md` (`report`)."""
