/*
 * dbdl_native: the block path of CALL dbdl.predict_into (docs/postgres.md, "The C helper").
 *
 * dbdl.predict_rows(model text, kind text, query text, width int4, block_rows int4)
 *     RETURNS SETOF record            -- used as  ... FROM dbdl.predict_rows(...) AS r(k <key type>, p <kind's type>)
 *
 * runs the caller's query (two columns: a key, the features as bytea or real[]) through SPI as the
 * caller, packs up to block_rows rows' features into one bytea of native float32 (rows with NULL
 * features or a NULL element are left out and give a NULL prediction), hands each block to the
 * PL/Python function dbdl.score_block(model, kind, rows, block) (onnxruntime reads it with
 * np.frombuffer) and unpacks what it returns — int32 rows, int32 width, then rows * width values
 * (int64 classes for 'class', float32 otherwise) — into (key, prediction) rows: bigint, real or
 * real[]. No Python object is made per row.
 *
 * Every length is checked before it is read: a feature value of the wrong size, a block of the
 * wrong size coming back, a wrong result type: a dbdl error ("dbdl.<Class>: ..." with the class's
 * SQLSTATE, dbdl_udf/errors.py), never a crash or a wrong value. SECURITY INVOKER: the caller's
 * query runs with the caller's rights; the scorer is looked up by its qualified name and exact
 * argument types (no search_path), and the caller must be allowed to execute it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

/* dbdl_udf/errors.py's SQLSTATEs */
#define DBDL_INVALID_ARGUMENT MAKE_SQLSTATE('D', 'B', '0', '0', '1')
#define DBDL_SHAPE_MISMATCH ERRCODE_INVALID_PARAMETER_VALUE
#define DBDL_DTYPE_MISMATCH ERRCODE_DATATYPE_MISMATCH
#define DBDL_RUNTIME_ERROR ERRCODE_EXTERNAL_ROUTINE_EXCEPTION
#define DBDL_CONFIGURATION ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE

#define MAX_BLOCK_ROWS (1 << 20)
#define MAX_WIDTH (1 << 24)
#define MAX_BLOCK_VALUES ((int64) 1 << 28) /* 1 GiB of float32 */
#define RESULT_HEADER 8

typedef enum
{
	KIND_CLASS,
	KIND_SCALAR,
	KIND_ARRAY
} Kind;

static const Oid kind_type[] = {INT8OID, FLOAT4OID, FLOAT4ARRAYOID};
static const char *const kind_type_name[] = {"bigint", "real", "real[]"};

PG_FUNCTION_INFO_V1(dbdl_predict_rows);
PG_FUNCTION_INFO_V1(dbdl_native_version);

/* the version of the block format; dbdl_udf.pgblocks.NATIVE_VERSION must say the same */
Datum
dbdl_native_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(1);
}

static void
copy_float32_le(float4 *dst, const char *src, int32 n)
{
#ifdef WORDS_BIGENDIAN
	for (int32 j = 0; j < n; j++)
	{
		uint32		v;

		memcpy(&v, src + 4 * (Size) j, 4);
		v = pg_bswap32(v);
		memcpy(dst + j, &v, 4);
	}
#else
	memcpy(dst, src, 4 * (Size) n);
#endif
}

/* one result row's prediction from the scorer's values (already checked to be there) */
static Datum
prediction(Kind kind, const char *src, int32 width)
{
	if (kind == KIND_CLASS)
	{
		int64		v;

		memcpy(&v, src, sizeof(v));
		return Int64GetDatum(v);
	}
	if (kind == KIND_SCALAR)
	{
		float4		v;

		memcpy(&v, src, sizeof(v));
		return Float4GetDatum(v);
	}
	else
	{
		/* a 1-D real[] of width elements, no NULLs: the array laid out directly */
		Size		size = ARR_OVERHEAD_NONULLS(1) + 4 * (Size) width;
		ArrayType  *a = (ArrayType *) palloc(size);

		SET_VARSIZE(a, size);
		a->ndim = 1;
		a->dataoffset = 0;
		a->elemtype = FLOAT4OID;
		ARR_DIMS(a)[0] = width;
		ARR_LBOUND(a)[0] = 1;
		memcpy(ARR_DATA_PTR(a), src, 4 * (Size) width);
		return PointerGetDatum(a);
	}
}

Datum
dbdl_predict_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext blockcxt;
	MemoryContext spicxt;
	char	   *model;
	char	   *kind_text;
	char	   *query;
	Kind		kind;
	int32		width;
	int32		block_rows;
	TupleDesc	outdesc;
	Oid			scorer;
	Oid			scorer_args[4] = {TEXTOID, TEXTOID, INT4OID, BYTEAOID};
	FmgrInfo	scorer_info;
	SPIPlanPtr	plan;
	Portal		portal;
	bytea	   *block;
	float4	   *feats;
	bool	   *valid;
	bool		checked = false;
	bool		is_bytea = false;
	Size		itemsize;

	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
							errmsg("dbdl.InvalidArgument: dbdl.predict_rows takes no NULL argument; "
								   "call it as CALL dbdl.predict_into(...) does")));
	model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	kind_text = text_to_cstring(PG_GETARG_TEXT_PP(1));
	query = text_to_cstring(PG_GETARG_TEXT_PP(2));
	width = PG_GETARG_INT32(3);
	block_rows = PG_GETARG_INT32(4);
	if (strcmp(kind_text, "class") == 0)
		kind = KIND_CLASS;
	else if (strcmp(kind_text, "scalar") == 0)
		kind = KIND_SCALAR;
	else if (strcmp(kind_text, "array") == 0)
		kind = KIND_ARRAY;
	else
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: predict_into's kind must be one of 'scalar', 'array', "
							   "'class'; got '%s'", kind_text)));
	if (width < 1 || width > MAX_WIDTH)
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: dbdl.predict_rows' width must be from 1 to %d features; "
							   "got %d", MAX_WIDTH, width)));
	if (block_rows < 1 || block_rows > MAX_BLOCK_ROWS)
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: predict_into's batch_rows must be a number of rows from 1 "
							   "to %d; got %d", MAX_BLOCK_ROWS, block_rows)));
	if ((int64) width * block_rows > MAX_BLOCK_VALUES)
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: a block of %d rows of %d features is over 1 GiB; "
							   "pass a smaller batch_rows", block_rows, width)));

	InitMaterializedSRF(fcinfo, 0);
	outdesc = rsinfo->setDesc;
	if (outdesc->natts != 2 || TupleDescAttr(outdesc, 1)->atttypid != kind_type[kind])
		ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
						errmsg("dbdl.DTypeMismatch: dbdl.predict_rows returns (key, prediction %s) for kind '%s'; "
							   "name them as AS r(k <the key's type>, p %s)",
							   kind_type_name[kind], kind_text, kind_type_name[kind])));

	scorer = LookupFuncName(list_make2(makeString("dbdl"), makeString("score_block")), 4, scorer_args, true);
	if (!OidIsValid(scorer))
		ereport(ERROR, (errcode(DBDL_CONFIGURATION),
						errmsg("dbdl.ConfigurationError: dbdl.score_block(text, text, integer, bytea) is missing; "
							   "run dbdl migrate")));
	if (pg_proc_aclcheck(scorer, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION, "dbdl.score_block");
	fmgr_info_cxt(scorer, &scorer_info, callcxt);

	itemsize = kind == KIND_CLASS ? sizeof(int64) : sizeof(float4);
	block = (bytea *) MemoryContextAllocHuge(callcxt, VARHDRSZ + 4 * (Size) width * block_rows);
	feats = (float4 *) VARDATA(block);
	valid = (bool *) MemoryContextAlloc(callcxt, sizeof(bool) * block_rows);
	blockcxt = AllocSetContextCreate(callcxt, "dbdl predict_rows block", ALLOCSET_DEFAULT_SIZES);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "dbdl.predict_rows: SPI_connect failed");
	spicxt = CurrentMemoryContext;
	plan = SPI_prepare(query, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "dbdl.predict_rows: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (!SPI_is_cursor_plan(plan))
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: predict_into's query must be one SELECT returning a key "
							   "and the features")));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, false);

	for (;;)
	{
		SPITupleTable *tuples;
		TupleDesc	qdesc;
		uint64		n;
		int32		nvalid = 0;
		int32		out_width = 0;
		const char *out = NULL;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, block_rows);
		n = SPI_processed;
		tuples = SPI_tuptable;
		if (n == 0 || tuples == NULL)
			break;
		if (n > (uint64) block_rows)
			elog(ERROR, "dbdl.predict_rows: fetched more rows than asked for");
		qdesc = tuples->tupdesc;
		if (!checked)
		{
			Oid			feature_type;

			if (qdesc->natts != 2)
				ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
								errmsg("dbdl.ShapeMismatch: the query must return two columns, a key and the "
									   "features; it returns %d", qdesc->natts)));
			if (TupleDescAttr(qdesc, 0)->atttypid != TupleDescAttr(outdesc, 0)->atttypid)
				ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
								errmsg("dbdl.DTypeMismatch: the key column is of type %s but the result names %s",
									   format_type_be(TupleDescAttr(qdesc, 0)->atttypid),
									   format_type_be(TupleDescAttr(outdesc, 0)->atttypid))));
			feature_type = TupleDescAttr(qdesc, 1)->atttypid;
			if (feature_type != BYTEAOID && feature_type != FLOAT4ARRAYOID)
				ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
								errmsg("dbdl.DTypeMismatch: dbdl.predict_rows reads features of type bytea or "
									   "real[]; got %s", format_type_be(feature_type))));
			is_bytea = feature_type == BYTEAOID;
			checked = true;
		}

		MemoryContextSwitchTo(blockcxt);
		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;
			Datum		f = SPI_getbinval(tuples->vals[i], qdesc, 2, &isnull);
			float4	   *dst = feats + (Size) nvalid * width;

			valid[i] = false;
			if (isnull)
				continue;
			if (is_bytea)
			{
				bytea	   *b = DatumGetByteaPP(f);
				Size		len = VARSIZE_ANY_EXHDR(b);
				const char *p = VARDATA_ANY(b);

				if (len == 4 * (Size) width)
					copy_float32_le(dst, p, width);
				else if (len == (Size) width)
				{
					for (int32 j = 0; j < width; j++)
						dst[j] = (float4) ((const uint8 *) p)[j];
				}
				else
					ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
									errmsg("dbdl.ShapeMismatch: model '%s' takes %d features per row as a bytea "
										   "of %d bytes (little-endian float32) or of %d bytes (uint8); got a row "
										   "of %zu bytes", model, width, 4 * width, width, len)));
			}
			else
			{
				ArrayType  *a = DatumGetArrayTypeP(f);
				int			nd = ARR_NDIM(a);

				if (ARR_ELEMTYPE(a) != FLOAT4OID)
					ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
									errmsg("dbdl.DTypeMismatch: the features for model '%s' are not real[]",
										   model)));
				if (ARR_HASNULL(a))
					continue;	/* a NULL element: the row's prediction is NULL */
				if (nd != 1 || ARR_DIMS(a)[0] != width)
					ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
									errmsg("dbdl.ShapeMismatch: model '%s' takes %d features per row, got a row "
										   "of %d values (%d dimensions); pass a vector of exactly %d numbers "
										   "(e.g. a FLOAT[%d] column)", model, width,
										   nd ? ArrayGetNItems(nd, ARR_DIMS(a)) : 0, nd, width, width)));
				if (VARSIZE(a) < ARR_DATA_OFFSET(a) + 4 * (Size) width)
					ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
									errmsg("dbdl.ShapeMismatch: a malformed real[] value (shorter than its "
										   "header says)")));
				memcpy(dst, ARR_DATA_PTR(a), 4 * (Size) width);
			}
			valid[i] = true;
			nvalid++;
		}

		if (nvalid > 0)
		{
			LOCAL_FCINFO(call, 4);
			Datum		result;
			bytea	   *r;
			Size		rlen;
			int32		rows;

			SET_VARSIZE(block, VARHDRSZ + 4 * (Size) width * nvalid);
			InitFunctionCallInfoData(*call, &scorer_info, 4, InvalidOid, NULL, NULL);
			call->args[0].value = PG_GETARG_DATUM(0);
			call->args[0].isnull = false;
			call->args[1].value = PG_GETARG_DATUM(1);
			call->args[1].isnull = false;
			call->args[2].value = Int32GetDatum(nvalid);
			call->args[2].isnull = false;
			call->args[3].value = PointerGetDatum(block);
			call->args[3].isnull = false;
			result = FunctionCallInvoke(call);
			if (call->isnull)
				ereport(ERROR, (errcode(DBDL_RUNTIME_ERROR),
								errmsg("dbdl.ModelRuntimeError: dbdl.score_block returned NULL for a block")));
			r = DatumGetByteaPP(result);
			rlen = VARSIZE_ANY_EXHDR(r);
			if (rlen < RESULT_HEADER)
				ereport(ERROR, (errcode(DBDL_RUNTIME_ERROR),
								errmsg("dbdl.ModelRuntimeError: dbdl.score_block returned a malformed block "
									   "(%zu bytes)", rlen)));
			memcpy(&rows, VARDATA_ANY(r), 4);
			memcpy(&out_width, VARDATA_ANY(r) + 4, 4);
			if (rows != nvalid || out_width < 1 || out_width > MAX_WIDTH ||
				(kind != KIND_ARRAY && out_width != 1) ||
				rlen != RESULT_HEADER + (Size) rows * out_width * itemsize)
				ereport(ERROR, (errcode(DBDL_RUNTIME_ERROR),
								errmsg("dbdl.ModelRuntimeError: dbdl.score_block returned a malformed block "
									   "(%d rows of %d values in %zu bytes for %d rows)",
									   rows, out_width, rlen, nvalid)));
			out = VARDATA_ANY(r) + RESULT_HEADER;
		}

		{
			Size		stride = (Size) out_width * itemsize;
			int32		j = 0;

			for (uint64 i = 0; i < n; i++)
			{
				Datum		values[2];
				bool		nulls[2];

				values[0] = SPI_getbinval(tuples->vals[i], qdesc, 1, &nulls[0]);
				if (valid[i])
				{
					values[1] = prediction(kind, out + stride * j, out_width);
					nulls[1] = false;
					j++;
				}
				else
				{
					values[1] = (Datum) 0;
					nulls[1] = true;
				}
				tuplestore_putvalues(rsinfo->setResult, outdesc, values, nulls);
			}
		}
		MemoryContextSwitchTo(spicxt);
		MemoryContextReset(blockcxt);
		SPI_freetuptable(tuples);
	}
	SPI_cursor_close(portal);
	SPI_finish();
	MemoryContextSwitchTo(callcxt);
	return (Datum) 0;
}
