"""autopaint.data"""
