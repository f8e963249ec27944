"""autopaint.storage"""
