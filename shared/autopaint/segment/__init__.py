"""autopaint.segment"""
