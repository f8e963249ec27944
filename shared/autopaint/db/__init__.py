"""autopaint.db"""
