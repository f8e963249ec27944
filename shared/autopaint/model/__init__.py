"""autopaint.model"""
