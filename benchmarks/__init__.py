"""`make bench`: measurements that belong out of pass/fail tests."""
