"""The columns Oblivio adds to every placed row; they never hold a raw id.

A module of their own, so the short commands (`forget`) can name them without pandas.
"""
SHARD, SLICE, RECORD_KEY, SUBJECT_KEY = "_shard", "_slice", "_record_key", "_subject_key"
PLACEMENT_COLUMNS = (SHARD, SLICE, RECORD_KEY, SUBJECT_KEY)
