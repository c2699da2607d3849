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

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/catalog.h"
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
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
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
PG_FUNCTION_INFO_V1(dbdl_predict_into_table);

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

/*
 * Where the (key, prediction) rows go: a tuplestore (dbdl.predict_rows, a set-returning function)
 * or the target table itself (dbdl.predict_into_table, table_multi_insert as COPY does). put()
 * takes a row whose datums stay valid until flush(), which runs at the end of every block.
 */
typedef struct Sink
{
	void		(*put) (struct Sink *sink, Datum *values, bool *nulls);
	void		(*flush) (struct Sink *sink);
	/* the tuplestore's */
	Tuplestorestate *store;
	TupleDesc	desc;
	/* the table's */
	Relation	rel;
	BulkInsertState bistate;
	CommandId	cid;
	TupleTableSlot **slots;
	int			nslots;
	int			used;
	int64		inserted;
} Sink;

#define TABLE_SLOTS 1000		/* COPY FROM's MAX_BUFFERED_TUPLES */

static void
store_put(Sink *sink, Datum *values, bool *nulls)
{
	tuplestore_putvalues(sink->store, sink->desc, values, nulls);
}

static void
store_flush(Sink *sink)
{
}

static void
table_flush(Sink *sink)
{
	if (sink->used == 0)
		return;
	table_multi_insert(sink->rel, sink->slots, sink->used, sink->cid, 0, sink->bistate);
	for (int i = 0; i < sink->used; i++)
		ExecClearTuple(sink->slots[i]);
	sink->inserted += sink->used;
	sink->used = 0;
}

static void
table_put(Sink *sink, Datum *values, bool *nulls)
{
	TupleTableSlot *slot;

	if (sink->used == sink->nslots)
		table_flush(sink);
	slot = sink->slots[sink->used++];
	ExecClearTuple(slot);
	slot->tts_values[0] = values[0];
	slot->tts_isnull[0] = nulls[0];
	slot->tts_values[1] = values[1];
	slot->tts_isnull[1] = nulls[1];
	ExecStoreVirtualTuple(slot);
}

/* the arguments both functions take first: model, kind, query, width, block_rows */
typedef struct Args
{
	char	   *model;
	char	   *kind_text;
	char	   *query;
	Kind		kind;
	int32		width;
	int32		block_rows;
} Args;

static Args
read_args(FunctionCallInfo fcinfo, int nargs, const char *name)
{
	Args		a;

	for (int i = 0; i < nargs; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
							errmsg("dbdl.InvalidArgument: %s takes no NULL argument; call it as CALL "
								   "dbdl.predict_into(...) does", name)));
	a.model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	a.kind_text = text_to_cstring(PG_GETARG_TEXT_PP(1));
	a.query = text_to_cstring(PG_GETARG_TEXT_PP(2));
	a.width = PG_GETARG_INT32(3);
	a.block_rows = PG_GETARG_INT32(4);
	if (strcmp(a.kind_text, "class") == 0)
		a.kind = KIND_CLASS;
	else if (strcmp(a.kind_text, "scalar") == 0)
		a.kind = KIND_SCALAR;
	else if (strcmp(a.kind_text, "array") == 0)
		a.kind = KIND_ARRAY;
	else
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: predict_into's kind must be one of 'scalar', 'array', "
							   "'class'; got '%s'", a.kind_text)));
	if (a.width < 1 || a.width > MAX_WIDTH)
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: %s' width must be from 1 to %d features; got %d",
							   name, MAX_WIDTH, a.width)));
	if (a.block_rows < 1 || a.block_rows > MAX_BLOCK_ROWS)
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: predict_into's batch_rows must be a number of rows from 1 "
							   "to %d; got %d", MAX_BLOCK_ROWS, a.block_rows)));
	if ((int64) a.width * a.block_rows > MAX_BLOCK_VALUES)
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: a block of %d rows of %d features is over 1 GiB; "
							   "pass a smaller batch_rows", a.block_rows, a.width)));
	return a;
}

/* the caller's query through SPI (SPI_connect'ed already), its two columns checked */
static Portal
open_query(const Args *a, bool *is_bytea)
{
	SPIPlanPtr	plan = SPI_prepare(a->query, 0, NULL);
	Portal		portal;
	TupleDesc	qdesc;
	Oid			feature_type;

	if (plan == NULL)
		elog(ERROR, "dbdl: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (!SPI_is_cursor_plan(plan))
		ereport(ERROR, (errcode(DBDL_INVALID_ARGUMENT),
						errmsg("dbdl.InvalidArgument: predict_into's query must be one SELECT returning a key "
							   "and the features")));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, false);
	qdesc = portal->tupDesc;
	if (qdesc == NULL || qdesc->natts != 2)
		ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
						errmsg("dbdl.ShapeMismatch: the query must return two columns, a key and the "
							   "features; it returns %d", qdesc ? qdesc->natts : 0)));
	feature_type = TupleDescAttr(qdesc, 1)->atttypid;
	if (feature_type != BYTEAOID && feature_type != FLOAT4ARRAYOID)
		ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
						errmsg("dbdl.DTypeMismatch: dbdl.predict_rows reads features of type bytea or "
							   "real[]; got %s", format_type_be(feature_type))));
	*is_bytea = feature_type == BYTEAOID;
	return portal;
}

/*
 * Score every row of the open query in blocks into the sink; the SPI connection stays open.
 */
static void
run_blocks(FunctionCallInfo fcinfo, const Args *a, Portal portal, bool is_bytea, Sink *sink)
{
	MemoryContext callcxt = fcinfo->flinfo->fn_mcxt;
	MemoryContext blockcxt;
	MemoryContext spicxt = CurrentMemoryContext;
	Oid			scorer;
	Oid			scorer_args[4] = {TEXTOID, TEXTOID, INT4OID, BYTEAOID};
	FmgrInfo	scorer_info;
	bytea	   *block;
	float4	   *feats;
	bool	   *valid;
	Size		itemsize = a->kind == KIND_CLASS ? sizeof(int64) : sizeof(float4);
	int32		width = a->width;

	scorer = LookupFuncName(list_make2(makeString("dbdl"), makeString("score_block")), 4, scorer_args, true);
	if (!OidIsValid(scorer))
		ereport(ERROR, (errcode(DBDL_CONFIGURATION),
						errmsg("dbdl.ConfigurationError: dbdl.score_block(text, text, integer, bytea) is missing; "
							   "run dbdl migrate")));
	if (pg_proc_aclcheck(scorer, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION, "dbdl.score_block");
	fmgr_info_cxt(scorer, &scorer_info, spicxt);

	block = (bytea *) MemoryContextAllocHuge(spicxt, VARHDRSZ + 4 * (Size) width * a->block_rows);
	feats = (float4 *) VARDATA(block);
	valid = (bool *) MemoryContextAlloc(spicxt, sizeof(bool) * a->block_rows);
	blockcxt = AllocSetContextCreate(spicxt, "dbdl block", ALLOCSET_DEFAULT_SIZES);
	(void) callcxt;

	for (;;)
	{
		SPITupleTable *tuples;
		TupleDesc	qdesc;
		uint64		n;
		int32		nvalid = 0;
		int32		out_width = 0;
		const char *out = NULL;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, a->block_rows);
		n = SPI_processed;
		tuples = SPI_tuptable;
		if (n == 0 || tuples == NULL)
			break;
		if (n > (uint64) a->block_rows)
			elog(ERROR, "dbdl: fetched more rows than asked for");
		qdesc = tuples->tupdesc;
		if (qdesc->natts != 2)
			elog(ERROR, "dbdl: the query's rows changed shape");

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
										   "of %zu bytes", a->model, width, 4 * width, width, len)));
			}
			else
			{
				ArrayType  *arr = DatumGetArrayTypeP(f);
				int			nd = ARR_NDIM(arr);

				if (ARR_ELEMTYPE(arr) != FLOAT4OID)
					ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
									errmsg("dbdl.DTypeMismatch: the features for model '%s' are not real[]",
										   a->model)));
				if (ARR_HASNULL(arr))
					continue;	/* a NULL element: the row's prediction is NULL */
				if (nd != 1 || ARR_DIMS(arr)[0] != width)
					ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
									errmsg("dbdl.ShapeMismatch: model '%s' takes %d features per row, got a row "
										   "of %d values (%d dimensions); pass a vector of exactly %d numbers "
										   "(e.g. a FLOAT[%d] column)", a->model, width,
										   nd ? ArrayGetNItems(nd, ARR_DIMS(arr)) : 0, nd, width, width)));
				if ((Size) VARSIZE(arr) < (Size) ARR_OVERHEAD_NONULLS(1) + 4 * (Size) width)
					ereport(ERROR, (errcode(DBDL_SHAPE_MISMATCH),
									errmsg("dbdl.ShapeMismatch: a malformed real[] value (shorter than its "
										   "header says)")));
				memcpy(dst, ARR_DATA_PTR(arr), 4 * (Size) width);
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
				(a->kind != KIND_ARRAY && out_width != 1) ||
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
					values[1] = prediction(a->kind, out + stride * j, out_width);
					nulls[1] = false;
					j++;
				}
				else
				{
					values[1] = (Datum) 0;
					nulls[1] = true;
				}
				sink->put(sink, values, nulls);
			}
			sink->flush(sink);
		}
		MemoryContextSwitchTo(spicxt);
		MemoryContextReset(blockcxt);
		SPI_freetuptable(tuples);
	}
	SPI_cursor_close(portal);
}

Datum
dbdl_predict_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext callcxt = CurrentMemoryContext;
	Args		a = read_args(fcinfo, 5, "dbdl.predict_rows");
	Sink		sink = {store_put, store_flush};
	Portal		portal;
	bool		is_bytea;

	InitMaterializedSRF(fcinfo, 0);
	sink.store = rsinfo->setResult;
	sink.desc = rsinfo->setDesc;
	if (sink.desc->natts != 2 || TupleDescAttr(sink.desc, 1)->atttypid != kind_type[a.kind])
		ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
						errmsg("dbdl.DTypeMismatch: dbdl.predict_rows returns (key, prediction %s) for kind '%s'; "
							   "name them as AS r(k <the key's type>, p %s)",
							   kind_type_name[a.kind], a.kind_text, kind_type_name[a.kind])));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "dbdl.predict_rows: SPI_connect failed");
	portal = open_query(&a, &is_bytea);
	if (TupleDescAttr(portal->tupDesc, 0)->atttypid != TupleDescAttr(sink.desc, 0)->atttypid)
		ereport(ERROR, (errcode(DBDL_DTYPE_MISMATCH),
						errmsg("dbdl.DTypeMismatch: the key column is of type %s but the result names %s",
							   format_type_be(TupleDescAttr(portal->tupDesc, 0)->atttypid),
							   format_type_be(TupleDescAttr(sink.desc, 0)->atttypid))));
	run_blocks(fcinfo, &a, portal, is_bytea, &sink);
	SPI_finish();
	MemoryContextSwitchTo(callcxt);
	return (Datum) 0;
}

/*
 * Whether dbdl.predict_into_table may fill the table itself, as COPY would: a plain heap-like
 * table of this database (no partition, no catalog, no other session's temporary table) with two
 * columns of exactly the key's and the prediction's types, nothing that an INSERT would run or
 * check (no trigger, rule, index, row-level security, CHECK or NOT NULL constraint, identity or
 * generated column) and INSERT granted on the whole table, in a transaction that may write. For
 * any other target it returns NULL having run nothing, and predict_into runs INSERT … SELECT FROM
 * dbdl.predict_rows(…), which does all of that.
 */
static bool
plain_target(Relation rel, TupleDesc qdesc, Kind kind)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleConstr *constr = desc->constr;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition || IsCatalogRelation(rel) ||
		RELATION_IS_OTHER_TEMP(rel))
		return false;
	if (rel->trigdesc != NULL || rel->rd_rules != NULL || rel->rd_rel->relhasrules ||
		rel->rd_rel->relhastriggers || rel->rd_rel->relhasindex || RelationGetIndexList(rel) != NIL)
		return false;
	if (check_enable_rls(RelationGetRelid(rel), InvalidOid, true) != RLS_NONE)
		return false;
	if (constr != NULL && (constr->num_check > 0 || constr->has_not_null || constr->has_generated_stored))
		return false;
	if (desc->natts != 2)
		return false;
	for (int i = 0; i < 2; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->attidentity || att->attgenerated)
			return false;
	}
	{
		Form_pg_attribute key = TupleDescAttr(desc, 0);
		Form_pg_attribute qkey = TupleDescAttr(qdesc, 0);
		Form_pg_attribute pred = TupleDescAttr(desc, 1);

		if (key->atttypid != qkey->atttypid || (key->atttypmod != -1 && key->atttypmod != qkey->atttypmod) ||
			get_typtype(key->atttypid) == TYPTYPE_DOMAIN)
			return false;
		if (pred->atttypid != kind_type[kind] || pred->atttypmod != -1)
			return false;
	}
	if (pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		return false;
	if ((XactReadOnly && !RelationUsesLocalBuffers(rel)) || IsInParallelMode())
		return false;
	return true;
}

Datum
dbdl_predict_into_table(PG_FUNCTION_ARGS)
{
	MemoryContext callcxt = CurrentMemoryContext;
	Args		a = read_args(fcinfo, 6, "dbdl.predict_into_table");
	Oid			target = PG_GETARG_OID(5);
	Sink		sink = {table_put, table_flush};
	Relation	rel;
	Portal		portal;
	bool		is_bytea;

	/*
	 * INSERT is checked before the lock: a caller may not hold a lock until its transaction ends
	 * on a table it cannot write (LOCK TABLE would refuse it too); predict_into's INSERT … SELECT
	 * then reports the missing privilege in PostgreSQL's own words.
	 */
	if (pg_class_aclcheck(target, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		PG_RETURN_NULL();
	rel = table_open(target, RowExclusiveLock);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "dbdl.predict_into_table: SPI_connect failed");
	portal = open_query(&a, &is_bytea);
	if (!plain_target(rel, portal->tupDesc, a.kind))
	{
		SPI_cursor_close(portal);
		SPI_finish();
		table_close(rel, NoLock);
		MemoryContextSwitchTo(callcxt);
		PG_RETURN_NULL();
	}
	sink.rel = rel;
	sink.cid = GetCurrentCommandId(true);
	sink.bistate = GetBulkInsertState();
	sink.nslots = Min(TABLE_SLOTS, a.block_rows);
	sink.slots = (TupleTableSlot **) palloc(sizeof(TupleTableSlot *) * sink.nslots);
	for (int i = 0; i < sink.nslots; i++)
		sink.slots[i] = table_slot_create(rel, NULL);
	run_blocks(fcinfo, &a, portal, is_bytea, &sink);
	table_flush(&sink);
	for (int i = 0; i < sink.nslots; i++)
		ExecDropSingleTupleTableSlot(sink.slots[i]);
	FreeBulkInsertState(sink.bistate);
	table_finish_bulk_insert(rel, 0);
	SPI_finish();
	table_close(rel, NoLock);
	MemoryContextSwitchTo(callcxt);
	PG_RETURN_INT64(sink.inserted);
}
