"""autopaint.imaging"""
