"""Prints one PASS/FAIL line per test case of a pytest JUnit XML report."""
import sys
import xml.etree.ElementTree as ET

for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if tc.find("skipped") is not None:
        print("SKIP  self-test " + tc.get("name"))
        continue
    bad = tc.find("failure") is not None or tc.find("error") is not None
    print(("FAIL  " if bad else "PASS  ") + "self-test " + tc.get("name"))
