// index.d.ts is hand-written: check that it type-checks typical use, and that it has every
// message field and enum value of the proto (so that a proto change cannot leave it behind).

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import ts from 'typescript';

import { packageDefinition } from '../index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const program = ts.createProgram([path.join(here, 'types-check.ts')], {
  strict: true, noEmit: true, target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, types: ['node'],
});

test('index.d.ts type-checks a typical use', () => {
  const diagnostics = ts.getPreEmitDiagnostics(program)
    .map((d) => `${d.file?.fileName ?? ''}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
  assert.deepEqual(diagnostics, []);
});

test('index.d.ts declares every field and enum value of the proto', () => {
  const checker = program.getTypeChecker();
  const dts = program.getSourceFile(path.join(here, '..', 'index.d.ts'));
  assert.ok(dts, 'index.d.ts is part of the program');
  const exported = new Map(checker.getExportsOfModule(checker.getSymbolAtLocation(dts)).map((s) => [s.name, s]));
  const typeOf = (name) => {
    const symbol = exported.get(name);
    assert.ok(symbol, `index.d.ts exports ${name}`);
    return checker.getDeclaredTypeOfSymbol(symbol);
  };
  const members = (type) => (type.isUnion() ? type.types : [type]);
  let messages = 0;
  let enums = 0;
  for (const [fullName, def] of Object.entries(packageDefinition)) {
    const name = fullName.split('.').pop();
    if (def.type?.field) {
      messages += 1;
      const declared = new Set(members(typeOf(name)).flatMap((t) => checker.getPropertiesOfType(t).map((p) => p.name)));
      for (const field of def.type.field) assert.ok(declared.has(field.name), `${name}.${field.name} is in index.d.ts`);
    } else if (def.type?.value) {
      enums += 1;
      const declared = members(typeOf(name)).map((t) => t.value).sort();
      assert.deepEqual(declared, def.type.value.map((v) => v.name).sort(), `enum ${name}`);
    }
  }
  assert.equal(enums, 8);
  assert.ok(messages >= 20, `${messages} messages checked`);
});
