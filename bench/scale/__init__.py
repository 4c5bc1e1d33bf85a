"""The scale benchmark (make bench-scale): a shop of N customers on PostgreSQL."""
