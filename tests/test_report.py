"""The table's text: the teacher rows' most frequent instructions, as `wst_jax.eval` prints them."""
import numpy as np

from wst_jax.report import instructions_text, top_instructions


def test_instructions_text_lists_each_teacher_rows_most_frequent_instructions():
  tops = top_instructions(["Be brief.", "Add units.", "Be brief."], np.array([1.0, 0.0, 0.5]))
  assert tops[0] == {"instruction": "Be brief.", "count": 2, "reward": 0.75}
  tables = [{"title": "gsm8k (held out)", "instructions": {"(d) WST teacher": tops}},
            {"title": "other", "instructions": {}}]
  assert instructions_text(tables).splitlines() == [
      "gsm8k (held out), (d) WST teacher: most frequent instructions",
      "     2x  reward 0.750  'Be brief.'",
      "     1x  reward 0.000  'Add units.'"]
  assert instructions_text([{"title": "t", "instructions": {}}]) == ""
