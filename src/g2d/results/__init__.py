"""What reads finished runs: analyses, tables, figures and reports."""
